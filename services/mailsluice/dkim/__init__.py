"""DKIM for delivery workers and the admin CLI: keys (`keys`), which selector signs when
(`plan`), and the signature itself (`sign`: dkimpy canonicalises, `cryptography` signs)."""
