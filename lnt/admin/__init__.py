"""
The operator's command-line tool, lnt-admin.
"""
