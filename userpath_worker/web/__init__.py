"""The web pages (``userpath web``): owners sign in and manage their organization's API keys.

Server-rendered (Flask, Jinja2), on the same services as the CLI: every rule (owner only, name
uniqueness, grace limits, the last owner, audit rows) is the services'; the views only translate
forms into calls and errors into pages.
"""
