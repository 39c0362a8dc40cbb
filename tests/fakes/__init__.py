"""Fake nmap, masscan and gobuster for tests: real-looking output, no network (see scenario.py)."""
