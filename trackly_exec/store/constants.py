"""Every MongoDB collection name and Redis key prefix, in one place."""

from __future__ import annotations

# ---- MongoDB collections ------------------------------------------------------------------
COUNTERS = "counters"  # integer id sequences: {_id: name, seq}
ACCOUNTS = "accounts"
SENDING_LISTS = "sending_lists"
CONTACTS = "contacts"
AUDIENCES = "audiences"
CREATIVES = "creatives"
CAMPAIGNS = "campaigns"
EXECUTIONS = "executions"  # one per campaign occurrence (unique occurrence_key)
QUEUED = "queued_text_messages"  # QueuedTextMessage: the executor's queue
SENT = "message_sent"  # MessageSent: _id is the queued message id (at most one)
FAILED = "failed_messages"  # FailedMessage: the dead-letter collection, _id = message id
SHORT_LINKS = "message_short_links"  # MessageShortLink: _id is the short code
CLICKS = "link_clicks"
DELIVERY_REPORTS = "delivery_reports"  # raw report de-duplication (provider, id, status)
OUTBOX = "webhook_outbox"  # customer delivery-status webhooks to deliver
EVENTS = "events"  # alert events (FailedMessage, provider-error bursts, ...)
INBOUND = "inbound_messages"
LOCKS = "locks"  # leader leases for singleton loops (recovery sweeps); campaign trigger locks
REDRIVES = "redrives"  # journal of dead-letter re-drives in progress (redrive.recover)
RESERVATIONS = "send_reservations"  # cooldown reservations: one per (sending list, phone), see reservations.py
# numbers that sent STOP on a sending list, contacts or not: {_id: phones.opt_out_key (list id and a hash of the
# number), sending_list_id, keyword, at}; written by tracking/optout.py only (START deletes), read where contacts
# are created and test-sent
OPT_OUTS = "opt_outs"

ALL_COLLECTIONS = (
    COUNTERS,
    ACCOUNTS,
    SENDING_LISTS,
    CONTACTS,
    AUDIENCES,
    CREATIVES,
    CAMPAIGNS,
    EXECUTIONS,
    QUEUED,
    SENT,
    FAILED,
    SHORT_LINKS,
    CLICKS,
    DELIVERY_REPORTS,
    OUTBOX,
    EVENTS,
    INBOUND,
    LOCKS,
    REDRIVES,
    RESERVATIONS,
    OPT_OUTS,
)

# ---- Redis keys ----------------------------------------------------------------------------
REDIS_PREFIX = "trackly:"
RATE_KEY = REDIS_PREFIX + "rate:"  # + sending list id: GCRA theoretical arrival time
PENALTY_KEY = REDIS_PREFIX + "penalty:"  # + sending list id: provider-error slow-down factor
RATE_SENT_KEY = REDIS_PREFIX + "rate-sent:"  # + sending list id: its sends of the last second (sorted set)
HEALTH_KEY = REDIS_PREFIX + "health:"  # + instance name, with a TTL
# + database name: sorted set of the live executor processes (member: instance name, score: heartbeat expiry, ms)
EXECUTORS_KEY = REDIS_PREFIX + "executors:"

# ---- entry points --------------------------------------------------------------------------
DRIVER_GROUP = "trackly.drivers"
