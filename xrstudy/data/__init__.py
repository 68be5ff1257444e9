"""Step 1 of the flow: label files -> canonical tables -> the train / valid / test tables of a cell.

    sources/     one adapter per dataset, read exactly as distributed (`read_source(name, root)`)
    labels       canonical finding names, label policy, view filter
    merge        multi-source merge (intersection / union of findings), pure
    splits       official / patient / the authors' splits, split files + SHA-256
    fewshot      k-shot sets (never from test)
    studydata    `prepare(cfg) -> StudyData`: a RunConfig's tables, classes and split hash
    audit        leakage audit of split files (patients / images on two sides, target test images in an
                 init's pre-training data); `init_leak`, the rule `sweep plan` flags leaks by
    layouts/     the other direction: miniature copies in the distributed layouts (demo, tests)
    phantoms     procedural chest phantoms drawn for those layouts

No module here imports torch.
"""
