"""The experiment layer: the stages behind the Snakemake rules, config checks, file names
and reports. It builds on the method library (:mod:`tarot_select`) and the tasks
(:mod:`tarot_select.tasks`); neither of them imports it.

Modules
-------
:mod:`~.naming`      file and selection names (torch-free, imported by the Snakemake process)
:mod:`~.config`      checks of the workflow config that the JSON schema cannot express
:mod:`~.stages`      selection pipeline stages (data, proxy, gradients, whitening, selection,
                     downstream training, evaluation)
:mod:`~.lds_stages`  influence-estimation (LDS) benchmark stages
:mod:`~.report`      tables and figures
"""
