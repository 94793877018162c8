# The paper's exhibits (TAROT, arXiv:2412.00420) from whatever tasks the config ran:
# Fig. 4 and Table 6 (LDS tasks), Figs. 5 and 6 (segmentation), Fig. 7 (motion), Table 2
# (instruct) and claims.md, under results/paper/, each with the paper's published numbers
# (workflow/resources/paper_numbers.yaml) beside this run's. A kind the config lacks gives
# an exhibit that says "not run". Target: `snakemake --cores 2 paper` (rule in the Snakefile).


rule paper_lds:
    input:
        lds=paper_lds_files,
        numbers=PAPER_NUMBERS,
    output:
        report(
            f"{RESULTS}/paper/fig4_lds.png",
            caption="../report/paper_fig4.rst",
            category="Paper",
        ),
    log:
        f"{RESULTS}/paper/logs/fig4_lds.log",
    benchmark:
        f"{RESULTS}/paper/benchmarks/fig4_lds.tsv"
    conda:
        "../../envs/report.yaml"
    threads: res("figures", "threads")
    resources:
        mem_mb=res("figures", "mem_mb"),
        runtime=res("figures", "runtime"),
    params:
        lds=paper_lds_scores,
        paper=paper_numbers,
    script:
        "../scripts/paper_fig4.py"


rule paper_ablation:
    input:
        lds=paper_lds_files,
        numbers=PAPER_NUMBERS,
    output:
        report(
            f"{RESULTS}/paper/tab6_wfd_ablation.md",
            caption="../report/paper_tab6.rst",
            category="Paper",
        ),
    log:
        f"{RESULTS}/paper/logs/tab6_wfd_ablation.log",
    benchmark:
        f"{RESULTS}/paper/benchmarks/tab6_wfd_ablation.tsv"
    conda:
        "../../envs/report.yaml"
    threads: res("table", "threads")
    resources:
        mem_mb=res("table", "mem_mb"),
        runtime=res("table", "runtime"),
    params:
        lds=paper_lds_scores,
        paper=paper_numbers,
    script:
        "../scripts/paper_tab6.py"


rule paper_segmentation:
    input:
        records=paper_unit_files("segmentation"),
        numbers=PAPER_NUMBERS,
    output:
        report(
            f"{RESULTS}/paper/fig5_segmentation.png",
            caption="../report/paper_fig5.rst",
            category="Paper",
        ),
    log:
        f"{RESULTS}/paper/logs/fig5_segmentation.log",
    benchmark:
        f"{RESULTS}/paper/benchmarks/fig5_segmentation.tsv"
    conda:
        "../../envs/report.yaml"
    threads: res("figures", "threads")
    resources:
        mem_mb=res("figures", "mem_mb"),
        runtime=res("figures", "runtime"),
    params:
        units=paper_units("segmentation"),
        paper=paper_numbers,
        exhibit="fig5",
    script:
        "../scripts/paper_ratio_figure.py"


rule paper_tsne:
    input:
        tsne=paper_tsne_files,
        numbers=PAPER_NUMBERS,
    output:
        report(
            f"{RESULTS}/paper/fig6_tsne.png",
            caption="../report/paper_fig6.rst",
            category="Paper",
        ),
    log:
        f"{RESULTS}/paper/logs/fig6_tsne.log",
    benchmark:
        f"{RESULTS}/paper/benchmarks/fig6_tsne.tsv"
    conda:
        "../../envs/report.yaml"
    threads: res("figures", "threads")
    resources:
        mem_mb=res("figures", "mem_mb"),
        runtime=res("figures", "runtime"),
    params:
        tsne=paper_tsne_figures,
        paper=paper_numbers,
    script:
        "../scripts/paper_tsne.py"


rule paper_motion:
    input:
        records=paper_unit_files("motion"),
        numbers=PAPER_NUMBERS,
    output:
        report(
            f"{RESULTS}/paper/fig7_motion.png",
            caption="../report/paper_fig7.rst",
            category="Paper",
        ),
    log:
        f"{RESULTS}/paper/logs/fig7_motion.log",
    benchmark:
        f"{RESULTS}/paper/benchmarks/fig7_motion.tsv"
    conda:
        "../../envs/report.yaml"
    threads: res("figures", "threads")
    resources:
        mem_mb=res("figures", "mem_mb"),
        runtime=res("figures", "runtime"),
    params:
        units=paper_units("motion"),
        paper=paper_numbers,
        exhibit="fig7",
    script:
        "../scripts/paper_ratio_figure.py"


rule paper_instruction:
    input:
        records=paper_unit_files("instruct"),
        numbers=PAPER_NUMBERS,
    output:
        report(
            f"{RESULTS}/paper/tab2_instruction.md",
            caption="../report/paper_tab2.rst",
            category="Paper",
        ),
    log:
        f"{RESULTS}/paper/logs/tab2_instruction.log",
    benchmark:
        f"{RESULTS}/paper/benchmarks/tab2_instruction.tsv"
    conda:
        "../../envs/report.yaml"
    threads: res("table", "threads")
    resources:
        mem_mb=res("table", "mem_mb"),
        runtime=res("table", "runtime"),
    params:
        units=paper_units("instruct"),
        paper=paper_numbers,
    script:
        "../scripts/paper_tab2.py"


rule paper_claims:
    input:
        lds=paper_lds_files,
        records=paper_unit_files(),
        numbers=PAPER_NUMBERS,
    output:
        report(
            f"{RESULTS}/paper/claims.md",
            caption="../report/paper_claims.rst",
            category="Paper",
        ),
    log:
        f"{RESULTS}/paper/logs/claims.log",
    benchmark:
        f"{RESULTS}/paper/benchmarks/claims.tsv"
    conda:
        "../../envs/report.yaml"
    threads: res("table", "threads")
    resources:
        mem_mb=res("table", "mem_mb"),
        runtime=res("table", "runtime"),
    params:
        lds=paper_lds_scores,
        units=paper_units(),
        paper=paper_numbers,
    script:
        "../scripts/paper_claims.py"
