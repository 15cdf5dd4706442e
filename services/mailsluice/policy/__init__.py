"""Policy as data: provider rollup (and, later, shaping rules and bounce classes)."""
