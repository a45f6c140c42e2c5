"""Keys in PKCS#11 tokens (hardware tokens, HSMs): ``uri`` (RFC 7512 URIs: pure, light),
``token`` (the python-pkcs11 binding: find, log in, sign, create) and ``signers`` (the station
key and the CA key as the manifest and certificate code use them). Only ``uri`` is imported
without a ``pkcs11:`` URI in use: the binding is loaded when one is.
"""
