"""apiphant's deploy tasks for Fabric 3, on the machine you deploy from.

They drive the Ansible collection apiphant.deploy and know the product only by its inventory, so
they never import apiphant. A fabfile makes them its tasks:

    from pathlib import Path
    from apiphant_deploy import namespace

    ns = namespace(Path(__file__).parent)   # ns.add_task(...) adds tasks of your own
"""

from invoke import Collection

from apiphant_deploy import tasks


def namespace(folder):
    """The deploy tasks as the collection of a fabfile in `folder`; relative paths in its
    configuration (inventory, playbooks) are relative to that folder."""
    collection = Collection.from_module(tasks)
    collection.configure({**tasks.DEFAULTS, 'deploy_folder': str(folder)})
    return collection
