"""Stopword lists for lexical matching (English and Chinese).

Kept small and high-precision on purpose: every word dropped here can never be matched by
BM25, so only function words and question words that carry no topic are listed.
"""

ENGLISH = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its itself
    just me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves tell please explain
    describe
    """.split()
)

CHINESE = frozenset(
    """
    的 了 是 在 和 与 及 或 而 有 就 都 也 还 又 被 把 让 给 对 从 向 到 于 以 为 之 其 这 那 这个 那个
    这些 那些 我 你 您 他 她 它 我们 你们 他们 她们 它们 吗 呢 吧 啊 呀 么 什么 哪 哪个 哪些 哪里 如何
    怎么 怎样 怎么样 为什么 多少 几 是否 能否 可以 请 请问 一下 一个 一种 个 些 中 上 下 里 时 时候
    """.split()
)

ALL = ENGLISH | CHINESE
