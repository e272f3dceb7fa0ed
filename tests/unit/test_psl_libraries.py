"""dkimcheck.OrgDomains on both Public Suffix List libraries: publicsuffixlist (PyPI) and
publicsuffix2 (Debian 12's python3-publicsuffix2), with the same answers from each."""
from __future__ import annotations

import builtins
import os

import pytest

from spfmilter import dkimcheck
from spfmilter.dkimcheck import DEBIAN_PSL, PSL_LIBRARIES, load_org_domains, org_domain

# A small list in the Public Suffix List's format: a wildcard with an exception, a
# U-label rule (the list is UTF-8; names reach OrgDomains as A-labels) and a private rule.
LIST = """// test list
// ===BEGIN ICANN DOMAINS===
uk
co.uk
ck
*.ck
!www.ck
cn
公司.cn
// ===END ICANN DOMAINS===
// ===BEGIN PRIVATE DOMAINS===
github.io
// ===END PRIVATE DOMAINS===
"""

CASES = [
    ("mail.bank.co.uk", "bank.co.uk"),
    ("bank.co.uk", "bank.co.uk"),
    ("co.uk", None),  # a public suffix has no organisational domain
    ("b.c.ck", "b.c.ck"),  # *.ck: c.ck is a public suffix
    ("c.ck", None),
    ("a.www.ck", "www.ck"),  # !www.ck: the exception
    ("shop.xn--55qx5d.cn", "shop.xn--55qx5d.cn"),  # 公司.cn, asked in A-labels
    ("a.shop.公司.cn", "shop.xn--55qx5d.cn"),
    ("xn--55qx5d.cn", None),
    ("alice.github.io", "alice.github.io"),
    ("github.io", None),
    ("mail.bank.example", "bank.example"),  # not on the list: the default rule "*"
    ("example", None),
    ("", None),
    ("bad..name", None),
]


@pytest.fixture(params=PSL_LIBRARIES)
def library(request):
    pytest.importorskip(request.param)  # both are in setup.cfg's test extra; CI has both
    return request.param


@pytest.mark.parametrize("domain,org", CASES)
def test_both_libraries_give_the_same_organisational_domains(library, tmp_path, domain, org):
    path = tmp_path / "psl.dat"
    path.write_text(LIST, encoding="utf-8")
    orgs = load_org_domains(paths=(str(path),), libraries=(library,))
    assert orgs.source == str(path)
    assert orgs.of(domain) == org


def test_the_bundled_list_when_no_file_is_readable(library, tmp_path):
    orgs = load_org_domains(paths=(str(tmp_path / "missing.dat"),), libraries=(library,))
    assert orgs.source == f"{library} package"
    assert orgs.of("www.bbc.co.uk") == "bbc.co.uk"
    assert orgs.of("co.uk") is None


@pytest.mark.skipif(not os.path.exists(DEBIAN_PSL), reason="Debian's publicsuffix package is not installed")
def test_debians_list_reads_with_both(library):
    orgs = load_org_domains(libraries=(library,))
    assert orgs.source == DEBIAN_PSL
    assert orgs.of("news.bbc.co.uk") == "bbc.co.uk"
    assert orgs.aligned("a.example.com", "b.example.com")
    assert not orgs.aligned("x.github.io", "y.github.io")


def test_publicsuffixlist_is_preferred_and_publicsuffix2_used_without_it(tmp_path, monkeypatch):
    pytest.importorskip("publicsuffixlist")
    pytest.importorskip("publicsuffix2")
    missing = str(tmp_path / "missing.dat")
    assert load_org_domains(paths=(missing,)).source == "publicsuffixlist package"
    real_import = builtins.__import__

    def no_publicsuffixlist(name, *args, **kwargs):
        if name.split(".")[0] == "publicsuffixlist":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_publicsuffixlist)
    orgs = load_org_domains(paths=(missing,))
    assert orgs.source == "publicsuffix2 package"
    assert orgs.of("mail.bank.co.uk") == "bank.co.uk"


def test_no_library_is_a_clear_error(monkeypatch):
    with pytest.raises(ImportError, match="publicsuffixlist .*python3-publicsuffix2"):
        load_org_domains(libraries=("no_such_psl_module_a", "no_such_psl_module_b"))


@pytest.mark.parametrize("name,suffix,org", [
    ("a.b.example", "example", "b.example"),
    ("b.example", "example", "b.example"),
    ("example", "example", None),
    ("b.example", "", None),
    ("b.example", "other", None),
    ("xexample", "example", None),  # a suffix only counts at a label boundary
])
def test_org_domain_is_the_suffix_and_one_label(name, suffix, org):
    assert org_domain(name, suffix) == org


def test_the_loaders_cover_the_preference_list():
    assert set(PSL_LIBRARIES) == set(dkimcheck.LOADERS)
