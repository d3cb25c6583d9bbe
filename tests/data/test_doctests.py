"""The examples in the docstrings of pyrobust.data run and give what they show."""

import doctest

import pytest

from pyrobust.data import digits, dsprites, utils


@pytest.mark.parametrize("module", [dsprites, digits, utils], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
