from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from fedrec.config import DataConfig
from fedrec.data.interactions import DataError, load_interaction_data
from fedrec.tasks.preference.dataset import load_federated_data, load_split
from fedrec.tasks.preference.examples import split_examples
from fedrec.tasks.preference.prompt import render_preference_prompt
from tests.conftest import write_planted_dataset


@pytest.fixture(scope="module")
def movielens():
    return load_interaction_data("ml-100k")


def test_bundled_movielens_loads(movielens):
    assert len(movielens.interactions) == 100_000
    assert movielens.interactions["user"].nunique() == 943
    assert len(movielens.items) == 1682
    assert movielens.titles["1"] == "Toy Story (1995)"
    assert movielens.titles is movielens.titles  # built once, not per client round
    with pytest.raises(TypeError):
        movielens.titles["1"] = "changed"  # shared by every prompt: read-only


def test_split_has_no_leakage(movielens):
    split = split_examples(movielens, history_length=5, test_interactions=2)
    inter = movielens.interactions
    for user in list(split.test)[:100]:
        frame = inter[inter["user"] == user].sort_values("timestamp", kind="stable")
        test_items = {ex.item for ex in split.test[user]}
        assert len(test_items) == 2
        test_times = frame[frame["item"].isin(test_items)]["timestamp"]
        train_frame = frame[~frame["item"].isin(test_items)]
        assert train_frame["timestamp"].max() <= test_times.min()
        for ex in split.train[user]:
            assert ex.item not in test_items
            assert not test_items & {item for item, _ in ex.history}
        for ex in split.test[user]:
            assert not test_items & {item for item, _ in ex.history}
            assert len(ex.history) == 5
    assert not split.train_interactions.merge(
        pd.DataFrame([(ex.user, ex.item) for exs in split.test.values() for ex in exs], columns=["user", "item"])
    ).shape[0]


def test_training_history_is_chronological_window(movielens):
    split = split_examples(movielens, history_length=3)
    user = "1"
    frame = movielens.interactions[movielens.interactions["user"] == user].sort_values("timestamp", kind="stable")
    order = frame["item"].tolist()
    ex = split.train[user][0]
    assert [item for item, _ in ex.history] == order[:3]
    assert ex.item == order[3]
    assert ex.label == int(frame.iloc[3]["rating"] > 3)


def test_blocks_of_targets_share_the_history_before_them(movielens):
    sliding = split_examples(movielens, history_length=3, test_interactions=1)
    blocked = split_examples(movielens, history_length=3, test_interactions=1, targets_per_history=4)
    inter = movielens.interactions
    for user in ["1", "2", "7"]:
        order = inter[inter["user"] == user].sort_values("timestamp", kind="stable")["item"].tolist()
        n_train = len(order) - 1
        examples = blocked.train[user]
        assert [ex.item for ex in examples] == order[n_train - len(examples) : n_train]
        assert len(sliding.train[user]) - 3 <= len(examples) <= len(sliding.train[user])
        for k, ex in enumerate(reversed(examples)):
            anchor = n_train - (k // 4 + 1) * 4
            assert [item for item, _ in ex.history] == order[anchor - 3 : anchor]
            assert order.index(ex.item) >= anchor
        assert len({ex.history for ex in examples[-4:]}) == 1
    with pytest.raises(ValueError, match="targets-per-history must be at least 1"):
        split_examples(movielens, history_length=3, targets_per_history=0)


@pytest.mark.parametrize("scheme,partitions", [("iid", 7), ("skewed", 5), ("user", 30)])
def test_partitions_are_disjoint_and_cover_all_users(scheme, partitions):
    data = load_federated_data(DataConfig(max_users=30, history_length=3, partitioner=scheme), 42, 300, partitions)
    groups = [set(p) for p in data.partitions]
    assert len(groups) == partitions
    assert all(groups)
    assert sum(len(g) for g in groups) == len(set().union(*groups)) == 30
    assert set().union(*groups) == set(data.central.split.train)


def test_user_partitioner_needs_one_client_per_user():
    with pytest.raises(DataError, match="num-clients must be 30"):
        load_federated_data(DataConfig(max_users=30, partitioner="user"), 42, 300, 4)


def test_prompt_groups_history_and_asks_about_the_target(movielens):
    split = split_examples(movielens, history_length=4)
    ex = next(e for e in split.test.values() if {liked for _, liked in e[0].history} == {True, False})[0]
    titles = movielens.titles
    text = render_preference_prompt(ex, titles, "movies")
    liked_line, disliked_line, question = text.split("\n")
    liked = "; ".join(titles[i] for i, like in ex.history if like)
    disliked = "; ".join(titles[i] for i, like in ex.history if not like)
    assert liked_line == f"Movies the user liked: {liked}."
    assert disliked_line == f"Movies the user disliked: {disliked}."
    assert question == f"Will the user like {titles[ex.item]}? Answer Yes or No."


def test_title_genres_names_items_by_title_and_genres_in_every_prompt(movielens, tmp_path):
    named = replace(movielens, item_text="title-genres").prompt_names
    assert named["1"] == "Toy Story (1995) [Animation, Children's, Comedy]"
    assert movielens.prompt_names is movielens.titles  # the default names items by title alone
    inter, items = _write(
        tmp_path,
        "user,item,rating,timestamp\nu,1,5,1\nu,2,1,2\n",
        "item,title,genres\n1,A,Science Fiction|Drama\n2,B,\n",
    )
    data = replace(load_interaction_data(inter, items), item_text="title-genres")
    assert dict(data.prompt_names) == {"1": "A [Science Fiction, Drama]", "2": "B"}  # no genres: the title alone
    split = load_split(DataConfig(max_users=20, item_text="title-genres"), 42, 5)
    example = split.held_out_examples()[0]
    assert f"Will the user like {named[example.item]}?" in split.prompts([example])[0]


def test_unknown_item_text_is_refused(movielens):
    with pytest.raises(DataError, match="item-text must be one of title, title-genres; got 'plot'"):
        replace(movielens, item_text="plot")


def test_csv_dataset_loads(tmp_path):
    inter, items = write_planted_dataset(tmp_path)
    data = load_interaction_data(str(inter), str(items))
    assert data.interactions["user"].nunique() == 40
    assert data.titles["0"] == "good film 0"


def test_ml1m_folder_loads(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n1::20::2::978300761\n2::10::4::978300762\n")
    (tmp_path / "movies.dat").write_text("10::Heat (1995)::Action|Crime\n20::Babe (1995)::Children's|Comedy\n")
    data = load_interaction_data(str(tmp_path))
    assert len(data.interactions) == 3
    assert data.items.set_index("item").loc["20", "genres"] == "Children's Comedy"


def _write(tmp_path: Path, inter: str, items: str = "item,title\n1,A\n2,B\n") -> tuple[str, str]:
    (tmp_path / "i.csv").write_text(inter)
    (tmp_path / "items.csv").write_text(items)
    return str(tmp_path / "i.csv"), str(tmp_path / "items.csv")


@pytest.mark.parametrize(
    "inter,items,message",
    [
        ("user,item,rating\n1,1,5\n", "item,title\n1,A\n", r"i\.csv: missing column\(s\) \['timestamp'\]"),
        (
            "user,item,rating,timestamp\n1,1,5,3\n1,2,five,3\n",
            "item,title\n1,A\n2,B\n",
            r"i\.csv line 3: column 'rating' must be a finite number, found 'five'$",
        ),
        (
            "user,item,rating,timestamp\n1,1,5,3\n1,2,inf,3\n",
            "item,title\n1,A\n2,B\n",
            r"i\.csv line 3: column 'rating' must be a finite number, found inf$",
        ),
        (
            "user,item,rating,timestamp\n1,1,5,3\n1,2,,3\n",
            "item,title\n1,A\n2,B\n",
            r"i\.csv line 3: empty value in column 'rating'$",
        ),
        (
            "user,item,rating,timestamp\n1,1,5,3\n1,2,4,nan\n",
            "item,title\n1,A\n2,B\n",
            r"i\.csv line 3: empty value in column 'timestamp'$",
        ),
        ("", "item,title\n1,A\n", r"i\.csv is empty"),
        ("user,item,rating,timestamp\n", "item,title\n1,A\n", r"i\.csv: no interactions"),
        (
            "user,item,rating,timestamp\n1,1,5,3\n1,1,4,4\n",
            "item,title\n1,A\n",
            r"i\.csv line 3: duplicate \(user, item\) pair: user 1 item 1 \(1 duplicates in all\)",
        ),
        (
            "user,item,rating,timestamp\n1,1,5,3\n",
            "item,title\n1,A\n1,B\n",
            r"items\.csv line 3: duplicate item id 1 \(1 duplicates in all\)",
        ),
        (
            "user,item,rating,timestamp\n1,1,5,3\n",
            "item,title\n1,A\n,B\n",
            r"items\.csv line 3: empty item id",
        ),
        (
            "user,item,rating,timestamp\n1,1,5,3\n1,9,5,3\n",
            "item,title\n1,A\n",
            r"i\.csv line 3: item 9 is missing from .*items\.csv \(1 interactions name unknown items\)",
        ),
        ("user,item,rating,timestamp\n1,1,5,3\n", "item,name\n1,A\n", r"items\.csv: missing column\(s\) \['title'\]"),
    ],
)
def test_malformed_files_give_clear_errors(tmp_path, inter, items, message):
    paths = _write(tmp_path, inter, items)
    with pytest.raises(DataError, match=message):
        load_interaction_data(*paths)


def test_missing_dataset_path_is_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_interaction_data(str(tmp_path / "nope.csv"), "x.csv")


def test_validation_interactions_sit_between_training_and_test(movielens):
    split = split_examples(movielens, history_length=4, test_interactions=1, validation_interactions=2)
    plain = split_examples(movielens, history_length=4, test_interactions=1)
    inter = movielens.interactions
    for user in ["1", "2", "7"]:
        order = inter[inter["user"] == user].sort_values("timestamp", kind="stable")["item"].tolist()
        validation, test = split.validation[user], split.test[user]
        assert [ex.item for ex in validation] == order[-3:-1] and [ex.item for ex in test] == order[-1:]
        assert all([item for item, _ in ex.history] == order[-7:-3] for ex in validation)  # training only
        assert [item for item, _ in test[0].history] == order[-5:-1]  # the validation items are known by then
        assert test == plain.test[user]  # the test examples do not change
        trained = {ex.item for ex in split.train[user]} | {i for ex in split.train[user] for i, _ in ex.history}
        assert not trained & set(order[-3:])
    assert not set(map(tuple, split.train_interactions[["user", "item"]].to_numpy())) & {
        (ex.user, ex.item) for exs in split.validation.values() for ex in exs
    }
    assert split.held_out("validation") is split.validation and split.held_out("test") is split.test
    with pytest.raises(ValueError, match="test or validation"):
        split.held_out("train")
