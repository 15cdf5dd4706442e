"""The sandbox MX: an SMTP server that accepts every message and shows what it captured over
an HTTP API in the shape Mailpit uses, so local runs and tests never send mail anywhere."""
