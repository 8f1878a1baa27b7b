from ddb.stages.report import ordering_markdown, results_markdown, results_table


def _metrics(wga):
    split = {
        "wga": wga,
        "mean_acc": 0.9,
        "adjusted_mean_acc": 0.95,
        "groups": {"landbird_land": 0.99, "landbird_water": wga},
        "ci": {
            "wga": [wga - 0.05, wga + 0.05],
            "mean_acc": [0.88, 0.92],
            "adjusted_mean_acc": [0.93, 0.97],
            "groups": {"landbird_land": [0.97, 1.0], "landbird_water": [wga - 0.05, wga + 0.05]},
        },
    }
    return {"val": split, "test": split}


def test_table_has_a_row_per_method_in_percent_with_intervals():
    table = results_table({"erm": _metrics(0.712), "group_balanced": _metrics(0.8)})
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(
        "| method | train groups | val groups | WGA | mean acc | adjusted mean acc"
    )
    assert "| ERM | no |" in lines[2]
    assert "71.2 [66.2, 76.2]" in lines[2]
    assert "80.0 [75.0, 85.0]" in lines[3] and "Group-balanced" in lines[3]


def test_report_explains_both_means():
    text = results_markdown({"erm": _metrics(0.7)}, 0.95, {"landbird_land": 300})
    assert "plain accuracy" in text and "train* group" in text


def test_ordering_ranks_by_wga_and_says_where_ddb_stands():
    metrics = {
        "erm": _metrics(0.25),
        "group_balanced": _metrics(0.77),
        "jtt": _metrics(0.64),
        "dfr": _metrics(0.50),
        "ddb": _metrics(0.60),
    }
    text = ordering_markdown(metrics, "### Why\n\nBecause.")
    assert "Group-balanced ERM (oracle)† 77.0 > JTT 64.0 > DDB 60.0 > DFR 50.0 > ERM 25.0" in text
    assert "against ERM: +35.0 points (the intervals do not overlap)" in text
    assert "without train group labels (JTT): -4.0 points (the intervals overlap)" in text
    assert "with train group labels (Group-balanced ERM (oracle)): -17.0 points" in text
    assert "### Why\n\nBecause." in text
