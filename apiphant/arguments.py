"""Command-line options that an environment variable can give too: `--log-format` or APIPHANT_LOG_FORMAT.

A deployed process is started by a supervisor whose environment is easier to set than its command
line; the command line still wins, so a variable is only ever a default. A variable's value is
checked by the option's own type and choices, and a bad one stops the start with the variable's name.
"""

import argparse
import os

PREFIX = 'APIPHANT_'
_TRUE = ('1', 'true', 'yes', 'on')
_FALSE = ('0', 'false', 'no', 'off')


def variable(option):
    """'--log-format' -> 'APIPHANT_LOG_FORMAT'."""
    return PREFIX + option.lstrip('-').upper().replace('-', '_')


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose long options each read an APIPHANT_* variable when not given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.variables = []  # (name, action kind, argparse Action)

    def add_argument(self, *names, **kwargs):
        kind = kwargs.get('action', 'store')
        option = next((name for name in names if name.startswith('--')), None)
        if option is None or kind in ('help', 'version'):
            return super().add_argument(*names, **kwargs)
        name = variable(option)
        kwargs['help'] = f'{kwargs.get("help", "")} [{name}]'.lstrip()
        if kind == 'append':
            kwargs['default'] = None  # (set after parsing: see parse_args)
        action = super().add_argument(*names, **kwargs)
        self.variables.append((name, kind, action))
        return action

    def parse_args(self, args=None, namespace=None):
        """An attribute already on the namespace is one argparse leaves alone unless the option is
        given: the variables' values go there. An appended option given at all replaces its variable."""
        namespace = namespace or argparse.Namespace()
        appended = {}
        for name, kind, action in self.variables:
            text = os.environ.get(name, '').strip()
            if not text:
                continue  # an empty variable is an unset one, as a template leaves it
            value = self._value(name, kind, action, text)
            if kind == 'append':
                appended[action.dest] = value
            elif not hasattr(namespace, action.dest):
                setattr(namespace, action.dest, value)
        namespace = super().parse_args(args, namespace)
        for _, kind, action in self.variables:
            if kind == 'append' and getattr(namespace, action.dest) is None:
                setattr(namespace, action.dest, appended.get(action.dest, []))
        return namespace

    def _value(self, name, kind, action, text):
        try:
            if kind in ('store_true', 'store_false'):
                return self._switch(text, action)
            if kind == 'append':
                return [self._one(item, action) for item in text.replace(',', ' ').split()]
            return self._one(text, action)
        except (argparse.ArgumentTypeError, ValueError) as error:
            self.error(f'environment variable {name}: {error}')

    @staticmethod
    def _switch(text, action):
        if text.lower() in _TRUE:
            return action.const
        if text.lower() in _FALSE:
            return action.default
        raise ValueError(f'{text!r} is neither true nor false (1/0, true/false, yes/no, on/off)')

    @staticmethod
    def _one(text, action):
        value = action.type(text) if action.type else text
        if action.choices is not None and value not in action.choices:
            raise ValueError(f'{text!r} is not one of {", ".join(map(str, action.choices))}')
        return value
