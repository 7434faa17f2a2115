"""Privacy: what of a request and its response an event may carry (issue 4).

Nothing raw reaches disk or leaves the process: the request path keeps the raw parts of
an inference in memory (``masker.Captured``), and the pipeline masks them off the event
loop before the event is written. Modules, in the order an event meets them:

- ``profile``    ``load_profile(name_or_path) -> PrivacyProfile``; ``ProfileError``;
                 ``ProfileSelector`` (one profile per route). Rules in ``rules``,
                 entity names in ``entities``.
- ``sampling``   ``decide(inference_id, rate, status, flags) -> Decision``.
- ``analyzer``   ``build_analyzer(profiles) -> Analyzer``: one presidio engine, offline.
                 Custom recognizers in ``recognizers``; the fast path (anchored
                 windows, overlapping scan) in ``windowing``; repeated strings in
                 ``cache``.
- ``masker``     ``Masker(profile, analyzer, hash_key).mask(captured) -> MaskResult``;
                 never raises. JSON paths in ``selection``, budgets in ``payload``,
                 operators in ``operators``.
- ``identity``   ``ClientIdentity(source, key_file).pseudonym(headers, remote)``.
- ``streams``    ``StreamAssembler``: a stream's output, assembled for the event only.

Importing this package imports nothing heavy; ``analyzer`` (presidio, spaCy) is imported
only by whoever builds one.
"""
