"""``llmsvc batch``: OpenAI's Files and Batches API on the fleet's spare capacity.

Lines run through the router at priority ``batch``, earliest deadline first, with a
concurrency that follows the fleet (:mod:`llmsvc.batch.concurrency`); every batch
carries an ETA and an SLA status (:mod:`llmsvc.batch.sla`); storage is SQLite and
files on disk behind :class:`llmsvc.batch.store.Store`. See docs/batch.md.
"""
