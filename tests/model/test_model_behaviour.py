"""Behaviour of a trained model (tests/model/conftest.py: the quick profile on the
shipped sample), as a user of the API would see it: the same product written another
way gets the same class, obvious products get the obvious class, and the model is at
least as good on held-out products as it was when this floor was set.
"""

from __future__ import annotations

import html

import pytest
from sklearn.metrics import f1_score

# Measured on the shipped sample's test split (305 products) with this model: weighted F1
# 0.741 (README: 0.744 for the full profile's search). The floor sits a little below it,
# about one bootstrap standard error (~0.025 on 305 rows) lower: a change that makes the
# model clearly worse fails here, a small change in the features' noise does not.
MIN_TEST_F1_WEIGHTED = 0.71

def predict(model, products) -> list[int]:
    return [int(code) for code in model.predict(products[["designation", "description"]])]


VARIANTS = {
    "upper case": str.upper,
    "lower case": str.lower,
    "surrounding whitespace": lambda text: f"  \n\t{text} \r\n ",
    "HTML entities": lambda text: html.escape(text, quote=True).replace("é", "&eacute;")
    .replace("è", "&egrave;").replace("à", "&agrave;"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_class_does_not_change_with_how_the_text_is_written(model, test_rows, variant):
    change = VARIANTS[variant]
    products = test_rows.head(120).fillna({"description": ""})
    changed = products.assign(
        designation=products["designation"].map(change),
        description=products["description"].map(lambda d: change(d) if d else d),
    )
    before, after = predict(model, products), predict(model, changed)
    differ = [(products["designation"][i], b, a)
              for i, (b, a) in enumerate(zip(before, after, strict=True)) if b != a]
    assert not differ, f"{variant}: {len(differ)} products changed class, e.g. {differ[:3]}"


# Real designations of the held-out split (the model never saw them), each the kind of
# product nobody would hesitate on. Books and video games are split by the catalogue into
# new and used, which the text does not say: either of the two is the obvious class.
BOOK, VIDEO_GAME = {10, 2705}, {40, 2462}
OBVIOUS = {
    "Piscine tubulaire Bestway Hydrium 610 x 360 x 120 m": {2583},  # pool
    "Brosse de Perche Pour Parois et Sol Piscine": {2583},
    "Sony Dualshock 4 V2 - Gamepad - Sans Fil - Bluetooth - Bleu - Pour Sony Playstation 4":
        {50},  # gaming accessory
    "Carte Pokemon - Pandespiégle - Pv 60 - 71/122 - Commune - Vf": {1160},  # trading card
    "Housse De Couette 140x200 Wish + Taie 100% Coton 57 Fils": {1920},  # bed linen
    "Clairefontaine  Lot De 20 Cahiers Piqué Polypro 17x22 Cm 32 P Séyès 90g Vert": {2522},
    "Esthétique De Hegel (Les Fiches De Lecture D'universalis)": BOOK,
    "Zumba Fitness : Rush (Jeu Kinect) [Import Allemand] [Jeu Xbox 360]": VIDEO_GAME,
}


@pytest.mark.parametrize("designation", OBVIOUS)
def test_an_obvious_product_lands_in_the_obvious_class(model, designation):
    import pandas as pd

    products = pd.DataFrame({"designation": [designation], "description": [""]})
    assert predict(model, products)[0] in OBVIOUS[designation]


def test_the_model_keeps_its_score_on_the_held_out_products(model, test_rows):
    predicted = predict(model, test_rows)
    score = f1_score(test_rows["prdtypecode"], predicted, average="weighted")
    assert score >= MIN_TEST_F1_WEIGHTED, f"weighted F1 {score:.3f} < {MIN_TEST_F1_WEIGHTED}"
