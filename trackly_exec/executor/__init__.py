"""From the queue to the provider: the coordinator (poll, group by list, worker slots), one batch's pipeline (worker),
claims (the only writer of a queued message's claim/hold/release/intent/finish), send-time checks, the Redis rate
limiter, billing, outcomes (MessageSent / FailedMessage) and crash recovery.

Imports campaigns and below.
"""
