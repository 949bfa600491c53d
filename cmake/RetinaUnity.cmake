# Unity builds (RETINA_UNITY_BUILD, default ON): each library and test
# executable compiles its sources in batches of RETINA_UNITY_BATCH files per
# translation unit. libtorch's precompiled header alone costs ~15 s per
# translation unit here (a 570 MB PCH read by every TU), and gRPC's and
# Abseil's headers several seconds, so fewer, larger TUs halve the build.
# Sources must therefore not clash inside one TU: helpers in anonymous
# namespaces need distinct names within a library (the build says so).
option(RETINA_UNITY_BUILD "Compile each target's sources as a few unity translation units" ON)
set(RETINA_UNITY_BATCH 8 CACHE STRING "Source files per unity translation unit")

function(retina_unity target)
  if(RETINA_UNITY_BUILD)
    set_target_properties(${target} PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE ${RETINA_UNITY_BATCH})
  endif()
endfunction()
