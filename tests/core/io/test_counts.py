import numpy as np
import pytest

from napari_cellquant.core.annotation import Annotation, Boxes
from napari_cellquant.core.classes import BLOOD3, NET4
from napari_cellquant.core.errors import InputError, OutputExistsError
from napari_cellquant.core.io.counts import counts_rows, read_counts_csv, write_counts_csv


def _annotations():
    labels = np.zeros((10, 10), np.int32)
    labels[1:3, 1:3] = 1
    labels[5:7, 5:7] = 2
    labels[8:9, 0:2] = 4
    blood = Annotation(
        labels=labels, class_set=BLOOD3, classes={1: 1, 2: 1, 4: 3}, image_name="smear, 1.png"
    )
    nets = Annotation.empty(
        (20, 20),
        NET4,
        boxes=Boxes([[0, 0, 5, 5], [3, 3, 4, 4], [9, 9, 2, 2]], [1, 1, 3]),
        image_name='odd "name".jpg',
    )
    return [blood, nets]


def test_counts_rows_list_every_class_with_zeros():
    rows = counts_rows(_annotations())
    assert rows == [
        {"image": "smear, 1.png", "class": "rbc", "count": 2},
        {"image": "smear, 1.png", "class": "wbc", "count": 0},
        {"image": "smear, 1.png", "class": "platelet", "count": 1},
        {"image": 'odd "name".jpg', "class": "NET", "count": 2},
        {"image": 'odd "name".jpg', "class": "dead", "count": 0},
        {"image": 'odd "name".jpg', "class": "unstimulated", "count": 1},
        {"image": 'odd "name".jpg', "class": "decondensed", "count": 0},
    ]
    assert counts_rows([]) == []


def test_csv_round_trip_and_exact_columns(tmp_path):
    path = write_counts_csv(_annotations(), tmp_path / "counts.csv")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "image,class,count"
    assert lines[1] == '"smear, 1.png",rbc,2'  # quoted because of the comma
    assert len(lines) == 8
    assert read_counts_csv(path) == counts_rows(_annotations())


def test_csv_refuses_overwrite(tmp_path):
    path = write_counts_csv(_annotations()[:1], tmp_path / "c.csv")
    with pytest.raises(OutputExistsError):
        write_counts_csv(_annotations(), path)
    assert len(read_counts_csv(path)) == 3
    write_counts_csv(_annotations(), path, overwrite=True)
    assert len(read_counts_csv(path)) == 7


def test_read_tolerates_bom_crlf_column_order_and_extra_columns(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfcount,class,image,note\r\n3,wbc,a.png,x\r\n\r\n0,rbc,a.png,\r\n")
    assert read_counts_csv(path) == [
        {"image": "a.png", "class": "wbc", "count": 3},
        {"image": "a.png", "class": "rbc", "count": 0},
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\n\n", "is empty"),
        (b"image,klass,count\na,b,1\n", r"line 1: header .* lacks column\(s\) class"),
        (b"image,class,count\na,b\n", "line 2: 2 fields, expected 3"),
        (b"image,class,count\na,b,1\na,c,1.5\n", "line 3: count '1.5' is not a whole number"),
        (b"image,class,count\na,b,many\n", "count 'many' is not a whole number"),
        (b"image,class,count\na,b,-2\n", "line 2: count -2 is negative"),
        (b"image,class,count\n\xff\xfe\x00a,b,1\n", "not a UTF-8 text file"),
        (b'image,class,count\na,b,1\n"a,b,1\n', "line 3: not valid CSV"),
    ],
)
def test_malformed_csv_is_an_input_error(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        read_counts_csv(path)
    assert info.value.source == str(path)


def test_missing_csv(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_counts_csv(tmp_path / "none.csv")
    with pytest.raises(InputError, match="is not a file"):
        read_counts_csv(tmp_path)
