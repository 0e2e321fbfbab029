#!/usr/bin/env python
"""Django's command-line utility for the chat service.

On a developer's machine `python app/manage.py runserver` needs nothing set:
runserver turns DEBUG on unless DJANGO_DEBUG says otherwise, and brings the
development database up to date first. Every other command, and the deployed
service, keep the production defaults.
"""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    from django.core.management import execute_from_command_line

    if sys.argv[1:2] == ["runserver"]:
        os.environ.setdefault("DJANGO_DEBUG", "true")
        execute_from_command_line([sys.argv[0], "migrate", "--no-input", "--verbosity", "0"])
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
