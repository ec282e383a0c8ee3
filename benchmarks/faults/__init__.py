"""The seeded fault campaign: ``python -m benchmarks.faults [--short|--long] [--seed N]``.

It drives aexec only through its public surfaces — CLI processes, ``Executor``, the
store's reading API and what travels on the wire — so that the engine can change
underneath it.  One job per module:

``campaign``     the phases, from an empty directory to the verdict
``world``        the worker and coordinator processes, supervised under fixed names
``rabbit``       a private RabbitMQ node (also the test suite's ``private_rabbitmq``)
``postgres``     a private PostgreSQL cluster
``tcpproxy``     a TCP proxy that cuts or stalls connections (also used by the tests)
``wire``         raw AMQP beside aexec: firehose capture, publishing, dead letters
``pipelines``    the pipelines and steps the workers load (``remote_steps``: the remote one)
``ledger``       every execution of step code, written by the step itself
``workload``     the seeded runs and what each must end as
``schedule``     the seeded faults
``client``       submitting and cancelling runs as a library user
``faults``       the injector: each kind of fault, aimed and logged
``poison``       the bodies the system must refuse
``observe``      reading back the store
``model``        what was observed, as plain values
``checker``      the invariants (a pure function of the observations)
``report``       the violations and the summary line
"""
