"""From a campaign to queued messages: the scheduler (exactly once per occurrence), cron, one execution's evaluation
(audiences, compliance filters with counts), composition (variants, placeholders, tracked links) and the bulk insert
into the queue (queue).

Imports drivers, store and below (and the app context).
"""
