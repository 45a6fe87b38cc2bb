"""``oceanus import``: shop tables from PostgreSQL or MySQL/MariaDB into the warehouse.

Data path: ``sources/<one module per database>`` read the allow-listed columns with
a server-side cursor, batch by batch; ``runner`` turns each batch into Arrow and
hands it to ``targets/<one module per warehouse>``, which commits the rows and the
new watermark together. See docs/ARCHITECTURE.md, "Importer".
"""
