"""
ISO 7816 status words, as the cards, the reader and the platform use them (docs/protocol.rst):
one definition for every module that sends or checks one.
"""

from __future__ import annotations

SW_OK = b"\x90\x00"
SW_WRONG_LENGTH = b"\x67\x00"
#: security: a signature or MAC did not verify, a replayed command; M1: wrong key
SW_SECURITY = b"\x69\x82"
#: conditions not satisfied (e.g. CREDIT without INITIALIZE, over the limit, no session)
SW_CONDITIONS = b"\x69\x85"
SW_NO_CARD = b"\x6a\x81"
SW_FILE_NOT_FOUND = b"\x6a\x82"
#: no such record (GET TRANSACTION PROOF for another serial)
SW_NO_RECORD = b"\x6a\x83"
SW_WRONG_P1P2 = b"\x6a\x86"
SW_UNKNOWN_INS = b"\x6d\x00"
SW_UNKNOWN_CLA = b"\x6e\x00"
#: MAC2 does not verify
SW_MAC = b"\x93\x02"
#: no such key index
SW_KEY_INDEX = b"\x94\x03"
