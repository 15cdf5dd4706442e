"""The unsubscribe service: the RFC 8058 one-click endpoint and its confirmation page."""
