"""`mailsluice tracker`: the open pixel and click redirects of tracked mail."""
