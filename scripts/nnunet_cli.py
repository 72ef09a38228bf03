#!/usr/bin/env python
"""``nnUNetv2_predict_from_modelfolder``, run exactly as nnU-Net's console script runs it.

One difference only where a machine cannot import nnU-Net's trainer module (its training-time
dependencies, e.g. connected-components-3d, matplotlib, scikit-learn, are missing, as on our GPU test
machine): the trainer-class lookup is then replaced by a class whose ``build_network_architecture`` does
what ``nnUNetTrainer.build_network_architecture`` does (``get_network_from_plans``). This is printed.
Everything else (preprocessing/export worker processes, sliding window, file IO) is nnU-Net's own.
"""

import sys

try:
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer  # noqa: F401
except ImportError as error:
    import nnunetv2.inference.predict_from_raw_data as predict_module
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    class _TrainerNetwork:
        @staticmethod
        def build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                       num_output_channels, enable_deep_supervision=True):
            return get_network_from_plans(
                configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
                configuration_manager.network_arch_init_kwargs_req_import, num_input_channels, num_output_channels,
                allow_init=True, deep_supervision=enable_deep_supervision)

    print(f"nnunet_cli: nnU-Net's trainer module cannot be imported here ({error}); building the network with "
          "get_network_from_plans as nnUNetTrainer.build_network_architecture does", file=sys.stderr)
    predict_module.recursive_find_trainer_class_by_name = lambda name, *args, **kwargs: _TrainerNetwork

from nnunetv2.inference.predict_from_raw_data import predict_entry_point_modelfolder  # noqa: E402

if __name__ == "__main__":
    sys.argv[0] = "nnUNetv2_predict_from_modelfolder"
    predict_entry_point_modelfolder()
