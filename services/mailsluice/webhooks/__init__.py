"""The webhook sender (`mailsluice webhooks`): tenants' events POSTed to their endpoints, signed."""
