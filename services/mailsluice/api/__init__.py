"""The HTTP API (`mailsluice api`): batch sending with templates, suppressions, campaign stats."""
