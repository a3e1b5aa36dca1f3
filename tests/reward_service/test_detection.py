"""Detection reward (max 3.0) on crafted cases, the released-code bugs absent, and COCO AP via pycocotools."""
import pytest

from reward_service.detection import answer_to_coco, coco_ap, detection_reward
from reward_service.detection_reference import detection_reward_reference

CATS = ["person", "dog", "toothbrush"]
GEO = dict(scale=(1.0, 1.0), orig_size=(200, 200), resized_size=(200, 200))
GT_BOXES = [[10, 10, 60, 60], [100, 100, 180, 160]]
GT_LABELS = ["person", "dog"]


def det(ans, boxes=GT_BOXES, labels=GT_LABELS, **kw):
    out = detection_reward(ans, boxes, labels, CATS, convention="qwen25vl", **GEO, **kw)
    ref = detection_reward_reference(ans, boxes, labels, CATS, convention="qwen25vl", **GEO, **kw)
    assert out == ref, "vectorised and reference implementations must agree exactly"
    return out


def item(b, label):
    return f'{{"bbox_2d": {b}, "label": "{label}"}}'


def test_perfect_answer_scores_three():
    out = det("[" + item(GT_BOXES[0], "person") + "," + item(GT_BOXES[1], "dog") + "]")
    assert out == pytest.approx({"format": 1.0, "number": 0.75, "label": 1.0, "iou": 1.0, "penalty": 0.0,
                                 "total": 3.0})


def test_missing_object():
    out = det("[" + item(GT_BOXES[0], "person") + "]")
    # kept 1 of 1 predicted, 1 of 2 true: F1 = 2/3 -> 0.5; penalty 0.5 * (0 + 1/2)
    assert out["number"] == pytest.approx(0.5) and out["penalty"] == pytest.approx(0.25)
    assert out["total"] == pytest.approx(0.25 + 0.5 + 1.0 + 1.0 - 0.25)
    assert det("[" + item(GT_BOXES[0], "person") + "]", missing_penalty=False)["total"] == pytest.approx(2.75)


def test_extra_object_and_wrong_label():
    ans = "[" + item(GT_BOXES[0], "dog") + "," + item(GT_BOXES[1], "dog") + "," + item([0, 150, 20, 199], "dog") + "]"
    out = det(ans)
    # kept 2 of 3 predicted and 2 of 2 true: F1 0.8 -> 0.6; labels 1/2 right; penalty 0.5 * (1/3 + 0)
    assert out["number"] == pytest.approx(0.6) and out["label"] == pytest.approx(0.5)
    assert out["total"] == pytest.approx(0.25 + 0.6 + 0.5 + 1.0 - 0.5 / 3)


def test_shifted_box_below_iou_half_is_not_kept():
    out = det("[" + item([40, 10, 90, 60], "person") + "]")  # IoU 20*50 / (2*2500 - 1000) = 0.25
    assert out["total"] == pytest.approx(0.25) and out["iou"] == 0.0


def test_inverted_box_is_one_invalid_item_not_a_zero_answer():
    # Released code: an inverted box asserts inside GIoU and the whole answer scores 0.
    out = det("[" + item(GT_BOXES[0], "person") + "," + item([60, 60, 10, 10], "person") + "]")
    assert out["format"] == pytest.approx(0.5) and out["total"] > 1.0


def test_category_id_90_toothbrush_does_not_crash():
    out = det("[" + item([10, 10, 60, 60], "toothbrush") + "]", boxes=[[10, 10, 60, 60]], labels=["toothbrush"])
    assert out["total"] == pytest.approx(3.0)


def test_labels_steer_matching():
    # Two overlapping true boxes; the class term must pair each prediction with the box of its own label.
    gt = [[10, 10, 60, 60], [12, 12, 62, 62]]
    ans = "[" + item([12, 12, 62, 62], "person") + "," + item([10, 10, 60, 60], "dog") + "]"
    out = det(ans, boxes=gt, labels=["dog", "person"])
    assert out["label"] == 1.0


def test_size_weights_are_a_weighted_mean():
    # Small (IoU 1.0, weight 3) and large (IoU 0.6, weight 1) objects: (3*1 + 1*0.6) / 4 = 0.9.
    gt = [[0, 0, 20, 20], [0, 50, 100, 150]]
    ans = "[" + item([0, 0, 20, 20], "person") + "," + item([0, 50, 100, 110], "dog") + "]"
    assert det(ans, boxes=gt, labels=["person", "dog"], size_weights=True)["iou"] == pytest.approx(0.9)
    assert det(ans, boxes=gt, labels=["person", "dog"])["iou"] == pytest.approx(0.8)


def test_unknown_label_malformed_and_empty():
    assert det("[" + item(GT_BOXES[0], "cat") + "]")["total"] == 0.0
    assert det("not json")["total"] == 0.0
    assert det("[]")["total"] == 0.0
    assert det("[]", boxes=[], labels=[])["total"] == 3.0


def test_rescaling_and_qwen2vl():
    # Original 400x400 resized to 200x200: a perfect answer is in resized pixels.
    gt = [[20, 20, 120, 120]]
    geo = dict(scale=(0.5, 0.5), orig_size=(400, 400), resized_size=(200, 200))
    out = detection_reward("[" + item([10, 10, 60, 60], "person") + "]", gt, ["person"], CATS,
                           convention="qwen25vl", **geo)
    assert out["total"] == pytest.approx(3.0)
    q2 = "<|object_ref_start|>person<|object_ref_end|><|box_start|>(50,50),(300,300)<|box_end|>"
    assert detection_reward(q2, gt, ["person"], CATS, convention="qwen2vl", **geo)["total"] == pytest.approx(3.0)


def _coco_gt():
    return {
        "images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 18, "bbox": [100, 100, 80, 60], "area": 4800, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 90, "bbox": [20, 30, 100, 100], "area": 10000, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}],
    }


IDS = {"person": 1, "dog": 18, "toothbrush": 90}


def _results(answers):
    out = []
    for image_id, ans in answers.items():
        out += answer_to_coco(ans, CATS, IDS, convention="qwen25vl", scale=(1.0, 1.0), orig_size=(200, 200),
                              image_id=image_id)
    return out


def test_coco_ap_perfect_is_one():
    answers = {1: "[" + item([10, 10, 60, 60], "person") + "," + item([100, 100, 180, 160], "dog") + "]",
               2: "[" + item([20, 30, 120, 130], "toothbrush") + "]"}
    ap = coco_ap(_coco_gt(), _results(answers))
    assert ap["AP"] == pytest.approx(1.0) and ap["AP50"] == pytest.approx(1.0)
    assert ap["APm"] == pytest.approx(1.0) and ap["APl"] == pytest.approx(1.0)
    assert ap["APs"] is None, "no small object: COCOeval's -1 is undefined, not a score"


def test_coco_ap_is_zero_where_defined_without_predictions_and_undefined_without_objects():
    assert coco_ap(_coco_gt(), []) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": None, "APm": 0.0, "APl": 0.0}
    empty = {**_coco_gt(), "annotations": []}
    assert coco_ap(empty, []) == dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm", "APl"))


def test_coco_ap_runs_on_the_installed_pycocotools_without_an_info_key():
    """pycocotools 2.0.9 and 2.0.10 index the ground truth's `info` unconditionally (`make test-compat` runs this
    file under 2.0.10); the dicts built here have none."""
    from importlib.metadata import version

    gt = _coco_gt()
    assert "info" not in gt
    answers = {1: "[" + item([10, 10, 60, 60], "person") + "," + item([100, 100, 180, 160], "dog") + "]",
               2: "[" + item([20, 30, 120, 130], "toothbrush") + "]"}
    print(f"pycocotools {version('pycocotools')}")
    assert coco_ap(gt, _results(answers))["AP"] == pytest.approx(1.0)


def test_coco_ap_partial_case_hand_checked():
    # The dog is missed; the toothbrush box has IoU 0.75. Per category (every score 1.0): person AP 1.0 at all ten
    # IoU thresholds; dog 0; toothbrush 1.0 at thresholds 0.50..0.75 (6 of 10), 0 above -> 0.6.
    answers = {1: "[" + item([10, 10, 60, 60], "person") + "]",
               2: "[" + item([20, 30, 120, 105], "toothbrush") + "]"}  # IoU = 75*100 / (100*100) = 0.75
    ap = coco_ap(_coco_gt(), _results(answers))
    assert ap["AP"] == pytest.approx((1 + 0 + 0.6) / 3, abs=1e-6)
    assert ap["AP50"] == pytest.approx(2 / 3, abs=1e-6)
    assert ap["AP75"] == pytest.approx(2 / 3, abs=1e-6)
