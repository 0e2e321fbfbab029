#!/usr/bin/env python
"""Django's command-line utility for the chat service.

On a developer's machine `python app/manage.py runserver` needs nothing set:
runserver turns DEBUG on unless DJANGO_DEBUG says otherwise. Every other
command, and the deployed service, keep the production defaults.
"""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    if sys.argv[1:2] == ["runserver"]:
        os.environ.setdefault("DJANGO_DEBUG", "true")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
