-- Which version a blue/green rebuild copied, for versions that AdminRebuild made (NULL for
-- versions registered from a definition). A version number means one definition: registering
-- different handlers under the number of a rebuild-made copy is refused (the user's next version
-- number is taken by the copy), instead of swapping the copy's handlers without a rebuild.
ALTER TABLE projection_versions ADD COLUMN rebuilt_from integer;
