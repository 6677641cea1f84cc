"""The bank demo of `contend demo`: a workload that shows the library, not a part of it.

It uses contend's public API only and lives beside the library package, not in it; the ``contend
demo`` and ``contend health --demo-seconds`` commands and ``ops/console_demo.py`` run it.
"""

from contend_demo.bank import (
    STRATEGIES,
    TABLE_COLUMNS,
    Account,
    DemoConfig,
    DemoReport,
    DemoTallyHandler,
    InsufficientFundsError,
    StrategyResult,
    format_table,
    money_lines,
    run_demo,
    simulate,
    table_rows,
    write_plot,
)

__all__ = [
    "STRATEGIES",
    "TABLE_COLUMNS",
    "Account",
    "DemoConfig",
    "DemoReport",
    "DemoTallyHandler",
    "InsufficientFundsError",
    "StrategyResult",
    "format_table",
    "money_lines",
    "run_demo",
    "simulate",
    "table_rows",
    "write_plot",
]
