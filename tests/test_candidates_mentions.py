"""group_mentions: the per-(note, code) best mention, count and noisy-or both lexicons report."""

import numpy as np

from coder.candidates.mentions import expand_links, group_mentions


def test_groups_in_first_mention_order_with_the_best_and_the_first_of_equals():
    note = np.array([0, 0, 0, 0, 1, 1])
    code = np.array([7, 3, 7, 3, 3, 3])
    score = np.array([0.2, 0.5, 0.4, 0.5, 0.1, 0.3])
    affirmed = np.array([True, False, True, True, True, True])
    mentions = group_mentions(note, code, prefer=(score, affirmed))
    # groups: (0, 7) rows 0, 2; (0, 3) rows 1, 3 (equal scores: the affirmed one); (1, 3) rows 4, 5
    assert mentions.best.tolist() == [2, 3, 5] and mentions.count.tolist() == [2, 2, 2]
    assert np.allclose(mentions.noisy_or(score), [1 - 0.8 * 0.6, 1 - 0.5 * 0.5, 1 - 0.9 * 0.7])
    first_of_equals = group_mentions(note, code, prefer=(score,))
    assert first_of_equals.best.tolist() == [2, 1, 5]


def test_no_mentions():
    empty = np.zeros(0, dtype=np.int64)
    mentions = group_mentions(empty, empty, prefer=(np.zeros(0),))
    assert mentions.best.size == mentions.count.size == mentions.noisy_or(np.zeros(0)).size == 0


def test_expand_links_lists_each_keys_links_in_order():
    ptr = np.array([0, 2, 2, 5])  # key 0: links 0-1, key 1: none, key 2: links 2-4
    owner, link = expand_links(ptr, np.array([2, 1, 0, 2]))
    assert owner.tolist() == [0, 0, 0, 2, 2, 3, 3, 3] and link.tolist() == [2, 3, 4, 0, 1, 2, 3, 4]
