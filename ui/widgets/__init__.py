"""Reusable widgets shared by the browser, chat and inspection panels."""
