"""
Message layouts shared by the platform and the terminal: the reader's sign-in and purse
messages, card scripts.
"""
