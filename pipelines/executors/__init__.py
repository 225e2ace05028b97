"""Executors that only wire: the Ray executor (`ray`: batches in stream order, commits, observers),
where its actors go (`placement`), the actor classes (`actors`), its bounded, stream-ordered
`scheduler`, selector shards as actors (`shards`), feeding it from an iterator and the bootstrap
(`feed`), and what it tells the rest of a run (`observers`)."""
