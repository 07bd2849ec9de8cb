"""The store: the MongoDB client and indexes (client), every collection name and Redis key (constants), the stored
documents (models), the embedded nx-27017 server (embedded, nxserver), the alert event log (events) and the value
rules stored documents obey (phones, quiethours, segments).

Imports only the package's core modules (errors, config, logs, failpoints).
"""
