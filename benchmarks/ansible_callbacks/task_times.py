"""Ansible callback for benchmarks/deploy.py --profile: how long each task took, for every host together.

Enabled with ANSIBLE_CALLBACK_PLUGINS=benchmarks/ansible_callbacks ANSIBLE_CALLBACKS_ENABLED=task_times;
it appends one JSON line per playbook run to the file APIPHANT_TASK_TIMES names: when the run
started and ended, and [task, seconds] in the order the tasks ran (ansible-core has no such
callback of its own; ansible.posix's profile_tasks is not installed here).
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'task_times'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.started = time.time()
        self.tasks = []
        self.current = None

    def _begin(self, name):
        now = time.time()
        self._end(now)
        self.current = (name, now)

    def _end(self, now):
        if self.current:
            self.tasks.append([self.current[0], round(now - self.current[1], 3)])
            self.current = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._begin(task.get_name())

    def v2_playbook_on_handler_task_start(self, task):
        self._begin('handler: ' + task.get_name())

    def v2_playbook_on_play_start(self, play):
        self._end(time.time())

    def v2_playbook_on_stats(self, stats):
        now = time.time()
        self._end(now)
        with open(os.environ['APIPHANT_TASK_TIMES'], 'a') as out:
            out.write(json.dumps({'started': self.started, 'ended': now, 'tasks': self.tasks}) + '\n')
