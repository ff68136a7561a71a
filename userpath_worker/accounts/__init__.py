"""Accounts of the people who sign in to the web pages: passwords, invitations, sessions."""
