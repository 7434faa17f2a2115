"""Privacy: what of a request and its response an event may carry (issue 4).

Nothing raw reaches disk or leaves the process: the request path keeps references to
the raw parts of an inference in memory (``context.Capture``), and the pipeline's privacy
stage has them masked in a worker process before the event is written. Modules, in the
order an event meets them:

- ``context``    ``build_privacy(settings) -> PrivacyContext``: per event, the profile,
                 the client pseudonym and the ``Capture``; ``masking_worker``.
- ``memo``       ``HeaderMemo``: masked header-only results, reused by the stage.
- ``service``    ``MaskingService``: the worker process's side.
- ``profile``    ``load_profile(name_or_path) -> PrivacyProfile``; ``ProfileError``;
                 ``ProfileSelector`` (one profile per route). Rules in ``rules``,
                 entity names in ``entities``.
- ``sampling``   ``decide(inference_id, rate, status, flags) -> Decision``.
- ``analyzer``   ``build_analyzer(profiles) -> Analyzer``: one presidio engine, offline.
                 Custom recognizers in ``recognizers``; the tuned path (candidate
                 windows per recognizer family, one scan per family, presidio's own
                 patterns and validation) in ``prefilter`` and ``windowing``;
                 repeated strings in ``cache``.
- ``masker``     ``Masker(profile, analyzer, hash_key).mask(captured) -> MaskResult``
                 (``mask_many`` for a batch); never raises. Sections and recorded
                 headers in ``sections``, JSON paths in ``selection``, budgets in
                 ``payload``, operators in ``operators``.
- ``identity``   ``ClientIdentity(source, key_file).pseudonym(headers, remote)``.
- ``streams``    ``StreamAssembler``: a stream's output, assembled for the event only.

Importing this package imports nothing heavy; ``analyzer`` (presidio, spaCy) is imported
only by whoever builds one.
"""
