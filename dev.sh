#!/bin/sh
# spfmilter developer entry point.
#
#   ./dev.sh test [PYTEST ARGS]   install everything needed (Debian packages, venv, Python
#                                 dependencies) and run the whole test suite
#   ./dev.sh run [SPFMILTER ARGS] the developer's way to run it: install only what running needs
#                                 (a compiler and libmilter-dev for pymilter, the venv; never an MTA,
#                                 never test tools) and run the milter from this checkout in the
#                                 foreground (built-in defaults: header-only, inet:8890@127.0.0.1, stderr).
#                                 Production: the Debian package or pip, see README "Installing it".
#   ./dev.sh install              only install (including the RFC 7208 test suite, see below)
#   ./dev.sh reliability          the full-size reliability run; writes docs/RELIABILITY.md
#   ./dev.sh deb                  build the Debian package into dist/deb/ (installs the Debian
#                                 build tools it needs); then: apt install ./dist/deb/spfmilter_*_all.deb
#
# Runs as root on Debian 12 (bookworm); idempotent, so it is cheap to run again.
set -eu

cd "$(dirname "$0")"
VENV=${SPFMILTER_VENV:-.venv}
# Debian packages.  Running needs the compiler and headers pymilter builds against, the
# Python venv module and the Public Suffix List; the tests also need the MTA they drive
# end to end and the tools that check the man pages and the systemd unit, and a browser
# for the report page (chromium: ~110 MB to download once, ~9 s to install here; its tests
# take ~5 s and skip, saying why, where it is missing).
RUN_PACKAGES="gcc libc6-dev python3 python3-dev python3-venv libmilter-dev publicsuffix"
TEST_PACKAGES="$RUN_PACKAGES postfix groff-base man-db systemd chromium"

log() { printf 'dev.sh: %s\n' "$*" >&2; }

install_packages() {  # the packages named as arguments
    missing=""
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
    done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing Debian packages:$missing (run as root, or install them first)"
        exit 1
    fi
    log "installing Debian packages:$missing"
    # Postfix: install it without configuring or starting a system-wide instance; the tests
    # run private instances with their own configuration.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends $missing
}

# Sendmail for the Sendmail end-to-end tests (tests/mta/test_sendmail_spfmilter.py).
# Debian's sendmail-bin conflicts with postfix (both are a mail-transport-agent), so it is
# never installed as a package: its files (and sendmail-cf's .mc macros) are only unpacked
# into $SENDMAIL_ROOT, where the tests find them.  Its runtime libraries and m4 are ordinary
# packages that do not conflict with anything.
SENDMAIL_ROOT=${SPFMILTER_SENDMAIL_ROOT:-/opt/spfmilter-sendmail}
SENDMAIL_LIBS="m4 libwrap0 libdb5.3 libldap-2.5-0 liblockfile1 libnsl2 libsasl2-2 libssl3"

install_sendmail() {
    missing=""
    for pkg in $SENDMAIL_LIBS; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
    done
    if [ -x "$SENDMAIL_ROOT/usr/libexec/sendmail/sendmail" ] && [ -f "$SENDMAIL_ROOT/usr/share/sendmail/cf/m4/cf.m4" ] \
        && [ -z "$missing" ]; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        log "Sendmail for the end-to-end tests is not unpacked in $SENDMAIL_ROOT (run as root to get it); those tests will be skipped"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ -n "$missing" ]; then
        log "installing Debian packages for the Sendmail tests:$missing"
        apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $missing; }
    fi
    if [ ! -x "$SENDMAIL_ROOT/usr/libexec/sendmail/sendmail" ] || [ ! -f "$SENDMAIL_ROOT/usr/share/sendmail/cf/m4/cf.m4" ]; then
        log "unpacking sendmail-bin, sendmail-cf and sendmail-base into $SENDMAIL_ROOT (not installed as packages)"
        tmp=$(mktemp -d)
        if ! (cd "$tmp" && apt-get download -q sendmail-bin sendmail-cf sendmail-base >/dev/null 2>&1); then
            apt-get update -q >/dev/null
            (cd "$tmp" && apt-get download -q sendmail-bin sendmail-cf sendmail-base >/dev/null 2>&1) \
                || { rm -rf "$tmp"; log "could not download sendmail-bin/sendmail-cf/sendmail-base"; exit 1; }
        fi
        mkdir -p "$tmp/root"
        for deb in "$tmp"/*.deb; do
            dpkg-deb -x "$deb" "$tmp/root"
        done
        rm -rf "$SENDMAIL_ROOT"
        mkdir -p "$(dirname "$SENDMAIL_ROOT")"
        mv "$tmp/root" "$SENDMAIL_ROOT"
        rm -rf "$tmp"
    fi
}

# PostSRSd 1.x for the SRS interoperability tests (tests/interop/).  The postsrsd package
# would create a user and start a system-wide daemon, so its files are only unpacked into
# $POSTSRSD_ROOT, where the tests run private instances on loopback.  It needs only libc.
POSTSRSD_ROOT=${SPFMILTER_POSTSRSD_ROOT:-/opt/spfmilter-postsrsd}

install_postsrsd() {
    [ -x "$POSTSRSD_ROOT/usr/sbin/postsrsd" ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "PostSRSd for the interoperability tests is not unpacked in $POSTSRSD_ROOT (run as root to get it); those tests will be skipped"
        return 0
    fi
    log "unpacking postsrsd into $POSTSRSD_ROOT (not installed as a package)"
    tmp=$(mktemp -d)
    if ! (cd "$tmp" && apt-get download -q postsrsd >/dev/null 2>&1); then
        apt-get update -q >/dev/null
        (cd "$tmp" && apt-get download -q postsrsd >/dev/null 2>&1) \
            || { rm -rf "$tmp"; log "could not download postsrsd"; exit 1; }
    fi
    mkdir -p "$tmp/root"
    dpkg-deb -x "$tmp"/postsrsd_*.deb "$tmp/root"
    rm -rf "$POSTSRSD_ROOT"
    mkdir -p "$(dirname "$POSTSRSD_ROOT")"
    mv "$tmp/root" "$POSTSRSD_ROOT"
    rm -rf "$tmp"
}

# The Debian package (debian/): built with debhelper and dh-python/pybuild from a copy of the
# checkout (tracked and new files, not .venv or caches), so the tree stays clean; the .deb
# and lintian's report land in $DEB_DIR.  Debian's own tools run with Debian's PATH: a
# Python first on PATH (pyenv, a venv) would make pybuild use the wrong interpreter.
DEB_BUILD_PACKAGES="build-essential fakeroot debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools python3-wheel lintian"
DEB_DIR=${SPFMILTER_DEB_DIR:-dist/deb}
DEBIAN_PATH=/usr/sbin:/usr/bin:/sbin:/bin

install_deb_tools() {
    install_packages $DEB_BUILD_PACKAGES
}

build_deb() {
    version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' spfmilter/__init__.py)
    changelog=$(PATH=$DEBIAN_PATH dpkg-parsechangelog -S Version)
    if [ "$version" != "$changelog" ]; then
        log "debian/changelog is at $changelog but spfmilter/__init__.py at $version: add a changelog entry (dch -v $version)"
        exit 1
    fi
    tmp=$(mktemp -d)
    src="$tmp/spfmilter-$version"
    mkdir "$src"
    if [ -e .git ] && command -v git >/dev/null 2>&1; then
        git ls-files -z --cached --others --exclude-standard \
            | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$src"
    else
        tar --exclude=./.venv --exclude=./dist --exclude=./build --exclude=./tests/data-cache \
            --exclude='__pycache__' --exclude='*.egg-info' -cf - . | tar -xf - -C "$src"
    fi
    log "building spfmilter $version (.deb) in $tmp"
    if ! (cd "$src" && env -u PYTHONPATH -u VIRTUAL_ENV PATH=$DEBIAN_PATH dpkg-buildpackage -b -us -uc >"$tmp/build.log" 2>&1); then
        tail -n 40 "$tmp/build.log" >&2
        log "dpkg-buildpackage failed; the whole log is $tmp/build.log"
        exit 1
    fi
    mkdir -p "$DEB_DIR"
    rm -f "$DEB_DIR"/spfmilter_*
    mv "$tmp"/spfmilter_"$version"_all.deb "$tmp"/spfmilter_"$version"_*.buildinfo "$tmp"/spfmilter_"$version"_*.changes "$DEB_DIR"/
    mv "$tmp/build.log" "$DEB_DIR/spfmilter_${version}_build.log"
    rm -rf "$tmp"
    deb="$DEB_DIR/spfmilter_${version}_all.deb"
    # lintian: errors fail the build; warnings are shown (the README lists the ones kept)
    PATH=$DEBIAN_PATH lintian --allow-root --tag-display-limit 0 "$deb" >"$DEB_DIR/lintian.txt" 2>&1 || true
    cat "$DEB_DIR/lintian.txt" >&2
    if grep -q '^E: ' "$DEB_DIR/lintian.txt"; then
        log "lintian reports errors (above); $deb is not fit to install"
        exit 1
    fi
    case "$deb" in /*) path=$deb ;; *) path=./$deb ;; esac  # apt needs a path, not a bare name
    log "built $deb; install it with: apt install $path"
}

pick_python() {
    for candidate in python3 /usr/bin/python3; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import venv, sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    log "no Python >= 3.10 with the venv module found"
    exit 1
}

install_venv() {  # $1: "test" adds the test tools (pytest, hypothesis, mypy, ...)
    if [ ! -x "$VENV/bin/python" ]; then
        python=$(pick_python)
        log "creating virtual environment $VENV with $python"
        "$python" -m venv "$VENV"
    fi
    stamp="$VENV/.spfmilter-installed${1:+-$1}"
    if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
        log "installing spfmilter and its Python ${1:+$1 }dependencies into $VENV"
        "$VENV/bin/python" -m pip install -q -e ".${1:+[$1]}"
        touch "$stamp"
    fi
}

# The RFC 7208 conformance suite (the openspf test suite, test/rfc7208-tests.yml in pyspf's
# source distribution) that tests/milter/test_rfc7208_suite.py replays through the milter.
# It is fetched from PyPI with pip, checked against the hash pinned here, and unpacked into
# $SUITE_DIR (git-ignored) instead of being committed.  Re-runs only look at a stamp file.
# To move to another pyspf release, update both values and SUITE_SHA256 in the test module.
PYSPF_SDIST_VERSION=2.0.14
PYSPF_SDIST_SHA256=57a7ef01bda090173aafb6af0106251686ed73f03db4e911fcd34c57fc347186
SUITE_DIR=tests/data-cache

fetch_rfc_suite() {
    stamp="$SUITE_DIR/.pyspf-$PYSPF_SDIST_VERSION.sha256-$PYSPF_SDIST_SHA256"
    [ -f "$stamp" ] && [ -f "$SUITE_DIR/rfc7208-tests.yml" ] && return 0
    log "fetching the RFC 7208 test suite from the pyspf $PYSPF_SDIST_VERSION source distribution on PyPI"
    tmp=$(mktemp -d)
    "$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: -d "$tmp" "pyspf==$PYSPF_SDIST_VERSION" \
        || { rm -rf "$tmp"; log "could not download the pyspf $PYSPF_SDIST_VERSION source distribution"; exit 1; }
    sdist="$tmp/pyspf-$PYSPF_SDIST_VERSION.tar.gz"
    actual=$(sha256sum "$sdist" 2>/dev/null | cut -d' ' -f1)
    if [ "$actual" != "$PYSPF_SDIST_SHA256" ]; then
        rm -rf "$tmp"
        log "pyspf-$PYSPF_SDIST_VERSION.tar.gz has sha256 ${actual:-(missing)}, expected $PYSPF_SDIST_SHA256; not using it"
        exit 1
    fi
    tar --no-same-owner -xzf "$sdist" -C "$tmp" "pyspf-$PYSPF_SDIST_VERSION/test/rfc7208-tests.yml" \
        "pyspf-$PYSPF_SDIST_VERSION/test/rfc7208-tests.LICENSE" \
        || { rm -rf "$tmp"; log "test/rfc7208-tests.yml is not in pyspf-$PYSPF_SDIST_VERSION.tar.gz"; exit 1; }
    mkdir -p "$SUITE_DIR"
    rm -f "$SUITE_DIR"/.pyspf-*
    mv "$tmp/pyspf-$PYSPF_SDIST_VERSION/test/rfc7208-tests.yml" "$tmp/pyspf-$PYSPF_SDIST_VERSION/test/rfc7208-tests.LICENSE" "$SUITE_DIR/"
    rm -rf "$tmp"
    touch "$stamp"
}

command=${1:-test}
[ $# -gt 0 ] && shift
case "$command" in
    install)
        install_packages $TEST_PACKAGES
        install_deb_tools
        install_sendmail
        install_postsrsd
        install_venv test
        fetch_rfc_suite
        ;;
    test)
        install_packages $TEST_PACKAGES
        install_deb_tools  # tests/package/ builds the .deb
        install_sendmail
        install_postsrsd
        install_venv test
        fetch_rfc_suite
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    run)
        install_packages $RUN_PACKAGES
        install_venv
        exec "$VENV/bin/spfmilter" "$@"
        ;;
    deb)
        install_deb_tools
        build_deb
        ;;
    reliability)
        # the full-size reliability run (10,000 fuzzed, 100,000 soak sessions): docs/RELIABILITY.md
        install_packages $TEST_PACKAGES
        install_sendmail
        install_postsrsd
        install_venv test
        exec "$VENV/bin/python" -m tests.reliability.report --long --write docs/RELIABILITY.md "$@"
        ;;
    *)
        echo "usage: $0 test|run|install|deb|reliability [ARGS...]" >&2
        exit 2
        ;;
esac
