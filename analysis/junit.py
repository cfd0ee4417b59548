"""JUnit XML for CI systems: one test case per limit verdict and per metric comparison."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    suite: str
    classname: str
    name: str
    failure: str | None = None  # message when the case failed
    kind: str = "regression"
    detail: str = ""


def junit_xml(cases: list[Case], name: str = "loadkit compare") -> str:
    root = ET.Element(
        "testsuites",
        name=name,
        tests=str(len(cases)),
        failures=str(sum(c.failure is not None for c in cases)),
    )
    suites: dict[str, ET.Element] = {}
    for c in cases:
        suite = suites.get(c.suite)
        if suite is None:
            suite = ET.SubElement(
                root, "testsuite", name=c.suite, tests="0", failures="0", errors="0", skipped="0"
            )
            suites[c.suite] = suite
        suite.set("tests", str(int(suite.get("tests", "0")) + 1))
        case = ET.SubElement(suite, "testcase", classname=c.classname, name=c.name, time="0")
        if c.failure is not None:
            suite.set("failures", str(int(suite.get("failures", "0")) + 1))
            fail = ET.SubElement(case, "failure", message=c.failure, type=c.kind)
            fail.text = c.detail or c.failure
        elif c.detail:
            ET.SubElement(case, "system-out").text = c.detail
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: str | os.PathLike[str], cases: list[Case]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(junit_xml(cases))
