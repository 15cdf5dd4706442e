"""Realistic provider replies for every shipped adaptive-backoff rule, and how to feed them.

CASES holds (rule, provider, a reply that triggers it, a realistic reply that must not);
tests/delivery/shaping/test_adaptive_rules.py runs every rule against them,
tests/delivery/shaping/test_adaptive_engine.py borrows some for the state machine.
"""

from __future__ import annotations

import re

from mailsluice.policy.backoff import default_rules

IP = "192.0.2.17"


def reply(raw: str) -> tuple[int, str, str]:
    """(code, enhanced, text) as the transport reports a reply: aiosmtplib joins the lines of a
    multi-line reply without their "421-" prefixes; the enhanced code is split off the front."""
    lines = raw.split("\n")
    code = int(lines[0][:3])
    message = " ".join(line[4:].strip() for line in lines)
    match = re.match(r"^([245]\.\d{1,3}\.\d{1,3})\s*", message)
    if match:
        return code, match.group(1), message[match.end() :]
    return code, f"{code // 100}.0.0", message


# (rule, provider, a reply that triggers it, a realistic reply that must not)
CASES = [
    (
        "any-ip-temporarily-deferred",
        "yahoo",
        f"421 4.7.0 [TSS01] Messages from {IP} temporarily deferred due to unexpected volume or "
        "user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        "421 4.7.0 Try again later, closing connection.",
    ),
    (
        "any-ip-permanently-deferred",
        "yahoo",
        f"421 4.7.0 [TSS09] All messages from {IP} will be permanently deferred; Retrying will "
        "NOT succeed. See https://senders.yahooinc.com/smtp-error-codes",
        f"421 4.7.0 [TSS01] Messages from {IP} temporarily deferred due to user complaints",
    ),
    (
        "any-ip-reputation-rate-limited",
        "microsoft",
        f"451 4.7.650 The mail server [{IP}] has been temporarily rate limited due to IP "
        "reputation. For e-mail delivery information, see https://postmaster.live.com (S775)",
        "451 4.7.500 Server busy. Please try again later. (AS761)",
    ),
    (
        "any-ip-block-list",
        "microsoft",
        f"550 5.7.1 Unfortunately, messages from [{IP}] weren't sent. Please contact your "
        "Internet service provider since part of their network is on our block list (S3150). "
        "You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.",
        "550 5.5.0 Requested action not taken: mailbox unavailable (S2017)",
    ),
    (
        "any-server-busy",
        "microsoft",
        f"421 4.3.2 Server busy. Please try again later from [{IP}]. (S77714) "
        "[MW2NAM04FT010.eop-NAM04.prod.protection.outlook.com]",
        "421 4.3.2 Service not available, closing transmission channel",
    ),
    (
        "any-too-many-connections",
        None,
        "421 4.7.0 Too many concurrent SMTP connections from this IP address; please try again "
        "later.",
        "550 5.7.1 Too many concurrent SMTP connections from this IP address",
    ),
    (
        "any-rate-limit-exceeded",
        None,
        "450 4.7.1 Error: too many messages from your host, rate limit exceeded; try later",
        "450 4.2.0 Mailbox temporarily unavailable",
    ),
    (
        "google-unsolicited-rate-ip",
        "google",
        f"421-4.7.28 [{IP}      15] Our system has detected an unusual rate of\n"
        "421-4.7.28 unsolicited mail originating from your IP address. To protect our\n"
        "421-4.7.28 users from spam, mail sent from your IP address has been temporarily\n"
        "421-4.7.28 rate limited. Please visit\n"
        "421-4.7.28  https://support.google.com/mail/?p=UnsolicitedRateLimitError to\n"
        "421 4.7.28 review our Bulk Email Senders Guidelines. a1-20020a17090a00c100 - gsmtp",
        "421-4.7.28 Gmail has detected an unusual rate of unsolicited mail originating\n"
        "421 4.7.28 from your DKIM domain [example.net       30]. - gsmtp",
    ),
    (
        "google-unsolicited-rate-domain",
        "google",
        "421-4.7.28 Gmail has detected an unusual rate of unsolicited mail originating\n"
        "421-4.7.28 from your SPF domain [example.net       30]. To protect our users\n"
        "421 4.7.28 from spam, mail sent from your domain has been temporarily rate limited.",
        f"421-4.7.28 [{IP}      15] Our system has detected an unusual rate of\n"
        "421 4.7.28 unsolicited mail originating from your IP address. - gsmtp",
    ),
    (
        "google-low-ip-reputation",
        "google",
        f"421-4.7.0 [{IP}      15] Our system has detected that this message is\n"
        "421-4.7.0 suspicious due to the very low reputation of the sending IP address.\n"
        "421-4.7.0 To protect our users from spam, mail sent from your IP address has\n"
        "421 4.7.0 been temporarily rate limited. - gsmtp",
        "421-4.7.0 [{IP}] Our system has detected that this message is suspicious due\n"
        "421 4.7.0 to the nature of the content and/or the links within. - gsmtp",
    ),
    (
        "google-detected-this-message",
        "google",
        "421-4.7.0 [{IP}] Our system has detected that this message is suspicious due\n"
        "421 4.7.0 to the nature of the content and/or the links within. - gsmtp",
        "550-5.7.1 [{IP}] Our system has detected that this message is likely\n"
        "550 5.7.1 unsolicited mail. - gsmtp",
    ),
    (
        "google-unauthenticated-rate-limited",
        "google",
        "421-4.7.26 This mail has been rate limited because it is unauthenticated.\n"
        "421-4.7.26 Gmail requires all senders to authenticate with either SPF or DKIM.\n"
        "421 4.7.26  Authentication results: DKIM = did not pass - gsmtp",
        "550-5.7.26 This mail has been blocked because the sender is unauthenticated.\n"
        "550 5.7.26 Gmail requires all senders to authenticate with either SPF or DKIM. - gsmtp",
    ),
    (
        "google-try-again-later",
        "google",
        "421 4.7.0 Try again later, closing connection. (EHLO) a1-20020a17 - gsmtp",
        "450-4.2.1 The user you are trying to contact is receiving mail at a rate that\n"
        "450 4.2.1 prevents additional messages from being delivered. - gsmtp",
    ),
    (
        "yahoo-ts04-suspend",
        "yahoo",
        f"421 4.7.0 [TSS04] Messages from {IP} temporarily deferred due to unexpected volume or "
        "user complaints - 4.16.56.1; see https://postmaster.yahooinc.com/error-codes",
        f"421 4.7.0 [TSS01] Messages from {IP} temporarily deferred due to user complaints",
    ),
    (
        "yahoo-ts05-suspend",
        "yahoo",
        f"421 4.7.0 [TSS05] Messages from {IP} temporarily deferred due to user complaints",
        f"421 4.7.0 [TSS04] Messages from {IP} temporarily deferred due to user complaints",
    ),
    (
        "yahoo-ts02-throttle",
        "yahoo",
        "421 4.7.0 [TS02] Messages from x temporarily deferred due to unexpected volume; "
        "We're seeing unusual traffic patterns from your server.",
        "421 4.7.0 [TS01] Messages from x temporarily deferred due to user complaints",
    ),
    (
        "yahoo-ts03-throttle",
        "yahoo",
        f"421 4.7.0 [TS03] All messages from {IP} will be permanently deferred; Retrying will "
        "NOT succeed. See https://help.yahoo.com/kb/postmaster/SLN3434.html",
        f"421 4.7.0 [TS02] Messages from {IP} temporarily deferred",
    ),
    (
        "yahoo-retrying-will-not-succeed",
        "yahoo",
        f"421 4.7.0 [TSS09] All messages from {IP} will be permanently deferred; Retrying will "
        "NOT succeed. See https://senders.yahooinc.com/smtp-error-codes",
        f"421 4.7.0 [TSS01] Messages from {IP} temporarily deferred; retrying will succeed later",
    ),
    (
        "yahoo-gl01-throttle",
        "yahoo",
        f"421 4.7.0 [GL01] Message from ({IP}) temporarily deferred - 4.16.50. Please refer to "
        "https://senders.yahooinc.com/smtp-error-codes",
        "451 Message temporarily deferred - [160]",
    ),
    (
        "yahoo-blocklisted",
        "yahoo",
        f"553 5.7.1 [BL21] Connections will not be accepted from {IP}, because the ip is in "
        "Spamhaus's list; see https://senders.yahooinc.com/smtp-error-codes",
        "554 5.7.9 Message not accepted for policy reasons.",
    ),
    (
        "yahoo-max-messages-per-connection",
        "yahoo",
        "421 Max message per connection reached, closing transmission channel",
        "421 4.7.0 [TSS01] Messages from x temporarily deferred",
    ),
    (
        "microsoft-block-list-suspend",
        "microsoft",
        f"550 5.7.1 Unfortunately, messages from [{IP}] weren't sent. Please contact your "
        "Internet service provider since part of their network is on our block list (S3140).",
        "550 5.7.520 Access denied, Your organization does not allow external forwarding.",
    ),
    (
        "microsoft-max-connections",
        "microsoft",
        f"451 4.7.652 The mail server [{IP}] has exceeded the maximum number of connections. "
        "(S3115)",
        f"451 4.7.650 The mail server [{IP}] has been temporarily rate limited due to IP "
        "reputation.",
    ),
    (
        "microsoft-server-busy-suspend",
        "microsoft",
        f"451 4.7.500 Server busy. Please try again later from [{IP}]. (AS761)",
        "451 4.4.0 Message failed to be made redundant due to A shadow copy was required",
    ),
    (
        "microsoft-access-denied",
        "microsoft",
        "421 4.7.0 Access denied, please try again later. (S844)",
        "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)",
    ),
    (
        "microsoft-temporary-server-error",
        "microsoft",
        "451 4.7.500 Temporary server error. Please try again later. ATTR5",
        "451 4.7.500 Server busy. Please try again later. (AS763)",
    ),
    (
        "apple-hcm1-deferred",
        "apple",
        f"421 4.7.0 [HCM1] Your mail from {IP} was deferred. Please see "
        "https://support.apple.com/en-us/102322",
        "421 4.7.0 [CS01] Message rejected due to local policy.",
    ),
    (
        "apple-bs02-temporary-error",
        "apple",
        "451 4.7.1 [BS02] Temporary server error. Please try again later.",
        "451 4.7.1 [CS02] Message deferred due to local policy.",
    ),
    (
        "apple-service-unavailable",
        "apple",
        "421 4.7.0 Service unavailable - try again later",
        "550 5.1.1 <a@icloud.com>: user does not exist",
    ),
    (
        "apple-spamhaus-dbl",
        "apple",
        "554 5.7.1 [HM08] Your email was rejected due to having a domain present in the Spamhaus "
        "DBL -- see https://www.spamhaus.org/dbl/",
        "554 5.7.1 [CS01] Message rejected due to local policy.",
    ),
    (
        "orange-too-many-connections",
        "orange",
        "421 mwinf5c10 ME Trop de connexions, veuillez verifier votre configuration. Too many "
        "connections, slow down. OFR005_104 [104]",
        "550 5.1.1 Adresse d au moins un destinataire invalide. Invalid recipient. OFR_416",
    ),
    (
        "orange-service-refused",
        "orange",
        "421 mwinf5c20 ME Service refuse. Veuillez essayer plus tard. Service refused, please "
        "try later. OFR004_104 [104]",
        "421 mwinf5c10 ME Trop de connexions, veuillez verifier votre configuration.",
    ),
    (
        "orange-blocked-for-spamming",
        "orange",
        f"550 5.7.1 Service unavailable; client [{IP}] blocked using spamhaus; Client host "
        "blocked for spamming issues. OFR006_112 [112]",
        "550 5.2.2 Boite du destinataire pleine. Recipient overquota. OFR_417",
    ),
    (
        "gmx-too-many-connections",
        "gmx",
        f"421-gmx.net (mxgmx117) Nemesis ESMTP Service not available\n"
        f"421 Too many connections from {IP}",
        "550 Requested action not taken: mailbox unavailable",
    ),
    (
        "gmx-policy-restrictions-554",
        "gmx",
        "554-gmx.net (mxgmx014) Nemesis ESMTP Service not available\n"
        "554-No SMTP service\n554 Reject due to policy restrictions.",
        "421-gmx.net (mxgmx014) Nemesis ESMTP Service not available\n"
        "421 Reject due to policy restrictions.",
    ),
    (
        "gmx-policy-restrictions",
        "gmx",
        "421-gmx.net (mxgmx014) Nemesis ESMTP Service not available\n"
        "421 Reject due to policy restrictions.",
        "554-web.de (mxweb111) Nemesis ESMTP Service not available\n"
        "554 Reject due to policy restrictions.",
    ),
    (
        "gmx-policy-violations",
        "gmx",
        "554-web.de (mxweb111) Nemesis ESMTP Service not available\n"
        "554 Reject due to policy violations.",
        "450 Requested mail action not taken: mailbox unavailable",
    ),
    (
        "comcast-rl-rate-limited",
        "comcast",
        f"421 resimta-po-01v.sys.comcast.net comcast {IP} Comcast rate limited. Please see "
        "https://spa.xfinity.com/postmaster?faq=comcast-mail-errors#RL000010",
        f"554 resimta-po-01v.sys.comcast.net comcast {IP} Comcast block for spam. BL000010",
    ),
    (
        "mimecast-resource-unavailable",
        "mimecast",
        "451 Internal resource temporarily unavailable - https://community.mimecast.com/docs/"
        "DOC-1369#451",
        "550 Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550",
    ),
    (
        "qq-frequency-limited",
        "qq",
        "550 Ip frequency limited [http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022]",
        "550 Mailbox not found. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022",
    ),
    (
        "netease-dt-spm",
        "netease",
        "451 DT:SPM 163 mx31,QMCowAD3 1700000000, please try again 10 minutes later",
        "554 DT:SPM 163 mx31,QMCowAD3 1700000000 http://mail.163.com/help/help_spam_16.htm",
    ),
]

RULES = {r.name: r for r in default_rules()}


def fire_times(engine, provider, raw, count, *, start=0.0, spacing=1.0):
    """Feed the reply `count` times to destination "dest"; return the rules fired each time."""
    parsed = reply(raw)
    out = []
    for i in range(count):
        fired = engine.observe("dest", provider, parsed, start + i * spacing)
        out.append({f.rule for f in fired})
    return out
