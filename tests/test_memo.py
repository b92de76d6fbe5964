from edge.core.memo import Memo


def test_an_answer_is_computed_once_per_key() -> None:
    asked: list[str] = []

    def shout(word: str) -> str:
        asked.append(word)
        return word.upper()

    memo = Memo(shout, size=10)
    assert [memo["a"], memo["b"], memo["a"], memo["a"]] == ["A", "B", "A", "A"]
    assert asked == ["a", "b"]


def test_a_flood_of_new_keys_starts_it_over_within_its_size() -> None:
    memo = Memo(len, size=3)
    for word in ["a", "bb", "ccc", "dddd", "eeeee"]:
        assert memo[word] == len(word)
        assert len(memo) <= 3
    assert list(memo) == ["dddd", "eeeee"]  # started over at "dddd"
