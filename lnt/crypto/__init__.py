"""
Pure cryptography: the card's PBOC MACs, EC keys and signatures, secure messaging, the order-API
envelope, the consignment sign and AES. No I/O.
"""
