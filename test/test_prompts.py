"""clean_answer: what of a generated text becomes the published answer."""

from sage_irp_ros.prompts import clean_answer


def test_nul_is_removed_so_a_ros_string_carries_the_whole_answer():
    # a NUL inside a std_msgs/String cuts it short on the wire: the answer topic and the result would differ
    assert clean_answer("y\x00QR\x07 ok\tfine\nnext") == "yQR\x07 ok\tfine\nnext"


def test_answer_after_the_seed_prompt_and_before_an_echoed_question():
    assert clean_answer("Question: a\n\nAnswer: four.\nQuestion: next?") == "four."
