"""Running a FedMKT federation on Flower (:mod:`fedcot.federation.flower`, and
:mod:`fedcot.federation.flower_local` for a whole federation on one machine)."""
