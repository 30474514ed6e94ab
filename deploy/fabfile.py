"""apiphant's deploy tasks, run from a checkout: `fab deploy HOST` here (`fab --list` for all).

fabric.yaml here runs this checkout's playbooks/ with an inventory beside them; a product made by
`apiphant new` has a fabfile like this one in its deploy/ folder, running the installed collection.
"""

from pathlib import Path

from apiphant_deploy import namespace

ns = namespace(Path(__file__).parent)
