"""Other trackers' wire protocols, spoken at the edge.

- :mod:`collector.protocols.segment`: the Segment HTTP Tracking API (also spoken by
  RudderStack and Jitsu SDKs), decoded into the ``segment`` stream's fields;
- :mod:`collector.protocols.snowplow`: the Snowplow tracker protocol (``GET /i``,
  ``POST /com.snowplowanalytics.snowplow/tp2``), into the ``snowplow`` stream's;
- :mod:`collector.protocols.ids`: the retry-stable event id and placement time
  both derive their rows from;
- :mod:`collector.protocols.routes`: the HTTP glue, built once per worker and
  looked up only when no native route matched.

The decoders are pure (a JSON value or query pairs in, event dicts out, or
:class:`collector.validate.Invalid`); the glue runs their events through the
same validator, limits, enrichment, durable ack and spool as ``/e/``.
"""
