"""What happens after the send: provider webhooks, delivery reports onto MessageSent's tristates, reports parked until
their send record exists, opt-outs, short links and clicks, the customer's delivery-status webhook and its outbox,
counts (stats).

Imports executor and below.
"""
